"""The rules of the product in plain Python: no framework, ORM, driver, clock or I/O."""
