"""Image encoders, the catalogue index and generation metrics registered into RecBole."""
