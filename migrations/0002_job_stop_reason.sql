-- Why a job ended on a stopping rule (hyperparameters.patience, max_minutes):
-- the worker's sentence, e.g. "early stop at step 40: eval loss did not
-- improve by 0.01 for 3 evaluations (best 1.2345)". NULL for other endings.
ALTER TABLE jobs ADD COLUMN stop_reason TEXT;
