Enviado desde mi iPhone
