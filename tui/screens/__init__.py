"""The worklist's screens: the ranked list and one study."""
