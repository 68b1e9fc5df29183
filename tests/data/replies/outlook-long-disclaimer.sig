-- 
Sarah Connor
Line 1 of the legal notice: this message is confidential.
Line 2 of the legal notice: this message is confidential.
Line 3 of the legal notice: this message is confidential.
Line 4 of the legal notice: this message is confidential.
Line 5 of the legal notice: this message is confidential.
Line 6 of the legal notice: this message is confidential.
Line 7 of the legal notice: this message is confidential.
Line 8 of the legal notice: this message is confidential.
Line 9 of the legal notice: this message is confidential.
Line 10 of the legal notice: this message is confidential.
Line 11 of the legal notice: this message is confidential.
Line 12 of the legal notice: this message is confidential.
Line 13 of the legal notice: this message is confidential.
Line 14 of the legal notice: this message is confidential.
Line 15 of the legal notice: this message is confidential.
Line 16 of the legal notice: this message is confidential.
Line 17 of the legal notice: this message is confidential.
Line 18 of the legal notice: this message is confidential.
