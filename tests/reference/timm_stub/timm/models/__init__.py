"""Stand-in for `timm.models`: only `layers` and `registry` exist."""
