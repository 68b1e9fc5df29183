Klaus Weber
Weber GmbH
Tel. +49 30 1234567
