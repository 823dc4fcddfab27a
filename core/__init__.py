"""Bottom layer shared by every room: config composition, user-facing errors, device and seeding."""
