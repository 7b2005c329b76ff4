"""Long videos: the window arithmetic of diffusion forcing, the saved segments that make a long video
resumable, and the streaming of its frames through decode, filter and encode a segment at a time. Uses the
common base and media; the families that extend videos use it."""
