"""Pure signal processing, arrays in and arrays out: decoding and conditioning a clip
(``audio``), augmenting it (``augment``), and its feature vectors and log-mel frames
(``features``)."""
