Sent from my iPhone
