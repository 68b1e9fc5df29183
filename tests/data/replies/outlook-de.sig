Klaus Weber
Weber GmbH
