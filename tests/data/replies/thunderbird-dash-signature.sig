-- 
Bob Builder
Builder & Co.
