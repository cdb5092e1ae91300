"""Stage 2: ensemble soft targets (Ray Data batch inference, then averaging per uid)."""
