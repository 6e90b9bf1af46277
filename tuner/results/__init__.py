"""What a study shows and what comes after it: what a study looks like now (``status``; its
``trial_state`` is the one function that says what a trial is), the offline report, steering a
running study (``controls``), retraining a trial on train+val, warm starts from earlier studies,
optuna-dashboard and the console served beside it. It reads trials through the trial schema's
names (:mod:`tuner.trial_schema`)."""
