Envoyé de mon iPhone
