"""Call detail records: how usage reports become one record per call leg."""
