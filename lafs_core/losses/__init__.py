"""Losses: DINO with centring."""
