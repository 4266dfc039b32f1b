"""HTTP resources: thin classes that parse, validate, call the ledger and serialize."""
