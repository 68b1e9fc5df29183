-- 
Ops Team
https://status.example.com
