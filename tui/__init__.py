"""The terminal worklist (textual). Not built yet: arrives with the worklist issue."""
