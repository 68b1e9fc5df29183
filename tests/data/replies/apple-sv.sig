Skickat från min iPhone
