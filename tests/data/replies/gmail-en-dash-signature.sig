-- 
Bob Builder
Builder & Co. | https://builder.example
