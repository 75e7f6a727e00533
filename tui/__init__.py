"""The terminal worklist (textual): ranked cases, why and where, and the
radiologist's actions, all through :class:`triage.reading.service.WorklistService`."""
