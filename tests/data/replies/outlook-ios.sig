Get Outlook for iOS
