"""Stand-in marker of Forge's modules_forge package (its presence tells Forge apart)."""
