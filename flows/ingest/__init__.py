"""`sift preprocess`: inputs -> validated, deduplicated, split parquet shards (Ray Data)."""
