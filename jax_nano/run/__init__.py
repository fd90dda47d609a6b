"""The speedrun driver: picks a framework's trainer and runs a track on it; judges leaderboard eligibility."""
