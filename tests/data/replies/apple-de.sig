Von meinem iPhone gesendet
