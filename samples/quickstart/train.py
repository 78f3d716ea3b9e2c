# placeholder until the sample lands
