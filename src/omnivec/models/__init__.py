"""Model families: each module turns prepared inputs into pooled and per-token states."""
