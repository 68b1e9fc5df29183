Eva
