"""Training: losses, optimiser and schedules, the one trainer loop, and distributed setup."""
