"""The three long-running processes: milter, spooler, log follower, and their logging."""
