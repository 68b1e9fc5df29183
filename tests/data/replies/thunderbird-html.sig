-- 
Bob Builder
