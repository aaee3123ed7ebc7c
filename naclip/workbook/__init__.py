"""The workbook: study notebooks run with papermill into results/, with an index of every table and figure."""
