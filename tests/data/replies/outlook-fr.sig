Paul Martin
