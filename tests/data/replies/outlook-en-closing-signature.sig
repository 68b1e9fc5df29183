Sarah Connor
Head of Procurement
Cyberdyne Systems
Tel. +1 555 0100
