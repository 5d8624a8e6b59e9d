"""Pure metric functions over judge scores and answers (harmful rate, intervals, paired tests, refusal phrases, exact match). Imports only core."""
