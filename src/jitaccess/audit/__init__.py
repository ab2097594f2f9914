"""The hash-chained audit log: each record's hash covers its content and the previous hash."""
