"""Storage: the lake (interface and its local and S3 backends), Delta tables, the ledger, the
id index, step records and the MLflow registry. Everything that reads or writes state lives here."""
