"""Stand-in of Forge's backend package."""
