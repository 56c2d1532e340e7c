"""Adapters to external games and tools (libmelee for live Melee play)."""
