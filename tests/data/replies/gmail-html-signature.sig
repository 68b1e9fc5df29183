-- 
Bob Builder | Builder & Co.
