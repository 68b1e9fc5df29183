Bob
