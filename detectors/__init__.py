"""Detectors (bleed, fracture, nodule): arrays and metadata in, calibrated findings with regions out.

``routing`` decides from a series' header which detectors apply (no torch);
``heatmap``/``nets`` are the networks, ``engine`` batches inference across
series, ``anatomy``/``candidates``/``proposals``/``fp_filter`` are the two-stage
design that keeps regions inside their anatomy, ``phantoms``/``insertion``/
``realdata`` the training and validation data, ``train``/``train_filter``/
``evaluation`` how the shipped models are made and measured. It knows nothing
of the network or the database, and imports only ``dicom_io.pixels``.
"""
