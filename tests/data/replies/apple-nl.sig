Verstuurd vanaf mijn iPhone
