Get Outlook for Android<https://aka.ms/ghei36>
