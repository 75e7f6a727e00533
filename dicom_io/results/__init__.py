"""The AI's results and the signed report as DICOM objects, built with highdicom.

One module per object: ``ai_sr``, ``key_image``, ``report_sr``; what they share
(codes, series numbers, the study stub, :class:`FindingLike`) is in ``common``.


- :func:`build_ai_sr`: a Comprehensive SR following TID 1500 (Measurement
  Report): the triage AI as the device observer, one measurement group per
  AI finding region (TID 1410, a rectangle on the source image) or per
  finding without a region (TID 1501), each with its coded finding type
  (SNOMED CT), the probability, the detector's operating point and whether
  the probability reaches it, the algorithm (name, version, weights) and,
  for nodules, the diameter. Patient and study attributes are copied from the
  study so that the SR joins it in the PACS.
- :func:`build_key_image`: a Secondary Capture of a finding's strongest region
  with its box and "AI SUGGESTION" burned into the pixels.
- :func:`build_report_sr`: the signed report as a Basic Text SR, the
  radiologist its author and verifying observer.
- :func:`parse_ai_sr`: the AI SR read back (with highdicom) to kinds,
  probabilities and referenced images.

No database and no network: values in, ``pydicom`` datasets out. The AI's
output is labelled a suggestion in every object.
"""
