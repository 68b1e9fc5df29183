"""Postfix integration: parsing its mail log and its main.cf/master.cf."""
