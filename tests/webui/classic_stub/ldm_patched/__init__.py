"""Stand-in of Forge 1 (Forge Classic, reForge): its ComfyUI-derived backend package."""
