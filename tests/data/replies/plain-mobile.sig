Sent from my Galaxy
