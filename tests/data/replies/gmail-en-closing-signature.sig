Bob Builder
Builder & Co.
