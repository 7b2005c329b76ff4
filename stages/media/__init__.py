"""Media: frames as a stage sees them (whole, or in stored chunks for long videos), quality metrics and
perceptual hashes, the near-duplicate index, and codecs. Uses only the common base."""
