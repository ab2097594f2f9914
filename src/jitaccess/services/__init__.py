"""Use cases: one module each, one public verb_noun function taking a unit of work and values."""
